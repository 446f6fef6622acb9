"""Reference implementations the tests (and the benchmark, where it needs one) hold the job's code
to: plain Python, one record at a time, kept out of the production modules so that a change to
the code under test cannot move its own oracle."""
