"""The data-fidelity harness (issue 14): fingerprints of a database, a corpus of real SQL."""
