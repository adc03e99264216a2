"""Evaluation: questions -> answers -> metrics, the report page, the demo's model and server, and the device and processes of a run launched once or as several processes."""
