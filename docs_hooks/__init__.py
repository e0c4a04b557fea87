"""Build-time helpers of the documentation site (mkdocs.yml `hooks:`); not part of the installed package."""
