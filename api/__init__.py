"""territory's HTTP service (FastAPI): plans, grids and customer assignment."""
