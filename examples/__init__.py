"""Examples of apps using lifecycle."""
