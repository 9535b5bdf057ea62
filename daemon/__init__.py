"""The shell around the engine: configuration, ledger, watchers, scheduler, service, CLI."""
