"""Evaluation: questions -> answers -> metrics, the report page and the demo's model and server."""
