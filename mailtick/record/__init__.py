"""Stage `record`: a table of steps over one Intake, writing through one ledger (see stage.py)."""
