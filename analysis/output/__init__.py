"""What a run's analysis writes: report.json, the summary's figures, the job section."""
