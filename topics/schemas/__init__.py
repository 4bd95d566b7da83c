"""JSON Schemas (draft 2020-12) of the topic records, shipped as package data."""
