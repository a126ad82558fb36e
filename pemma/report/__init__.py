"""Results tables generated from tracked runs; nobody edits a table by hand."""
