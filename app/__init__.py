"""The service shell: settings, configuration, logging, HTTP app, worker and CLI."""
