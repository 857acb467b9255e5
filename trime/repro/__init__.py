"""The reproduction harness (``trime-repro TABLE DATA``): one entry point per paper table.

``runner`` runs console-script steps once (resumable: a finished step is skipped, an
interrupted one is rerun with the same command — fairseq-train resumes from
checkpoint_last.pt — and a step asked to run with other options than it was started with
is refused); ``recipes`` holds the budgets and the commands that train, index, tune and
evaluate; ``tables`` defines the tables' rows and writes them (markdown + JSON) to
``results/<table>/``.
"""
