"""The pipeline's stages, one module each, in data-flow order: questions, answers, finetune, evaluate."""
