"""edgekit run and serve: session, generation, chat template and reply parsing, the HTTP server."""
