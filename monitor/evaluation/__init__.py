"""The evaluation pass: both domains as of one time, with the rules in force; backtest and report."""
