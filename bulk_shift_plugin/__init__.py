"""The bulk-shift companion service for Label Studio.

It receives Label Studio webhooks, remembers every task's label and its origin, turns
one person's move A -> B into a proposal to move the tasks that follow it (the rule in
:mod:`bulkshift.core.proposals`), applies accepted proposals as recorded, retryable and
undoable batch updates, and serves the review, history and folder-naming pages.
Start it with ``python -m bulk_shift_plugin``.
"""
