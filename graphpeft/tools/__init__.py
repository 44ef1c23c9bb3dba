"""Tools for looking at a rewrite: explain, graph views (networkx, DOT, HTML) and the graphpeft command."""
