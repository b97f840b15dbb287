"""The machine side of the review app: models that the reviewers' labels train, and their registry.

Plain Python + torch + transformers; nothing here imports Django, so a GPU worker, a notebook or a
test can use it alone. See docs/models.md.
"""
