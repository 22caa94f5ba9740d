"""cds-plugin: a CDS Hooks 2.0 service for diagnosis and treatment considerations with explanations."""

__version__ = "0.1.0"
