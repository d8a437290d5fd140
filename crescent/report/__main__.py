"""`python -m crescent.report`, as `crescent-report`."""

from crescent.report import main

main()
