"""The scoring job: its graph (graph.py), its Python operators (prepare.py, scoring.py), the
Java operators it wires (java_operators.py), its sources and sinks (connectors.py) and how a
run is started and stopped (run.py). Nothing here is imported by the CLI until a job is run."""
