"""The coupling tests on one table, the rows they leave out, which way an effect runs and the
verdicts."""
