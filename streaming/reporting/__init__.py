"""What a run leaves behind: its committed outputs and their summary, and the HTML report."""
