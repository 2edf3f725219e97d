"""models/bundled."""
