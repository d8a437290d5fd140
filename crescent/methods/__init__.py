"""What the stages do to their data: cleaning, dedup, extraction, voting, decontamination, SFT."""
