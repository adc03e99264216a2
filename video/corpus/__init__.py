"""Extracting a corpus: inputs and plan, background decoding, encoding, the run, its report, contact sheets, the folder lock."""
