"""Backtalk as a Pipecat bot: Pipecat Cloud's entry point, and ``python bot.py`` locally.

Pipecat Cloud's base image runs this file's ``bot(runner_args)`` for each session
(see ``Dockerfile.pipecat-cloud`` and ``pcc-deploy.toml``); the session's start
request carries ``{"videos": [...], "persona": ...}``. Locally, ``python bot.py``
serves it under Pipecat's development runner. Most people want ``backtalk talk`` or
``backtalk serve`` instead.
"""

from backtalk.agent.runner import bot

__all__ = ["bot"]

if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
