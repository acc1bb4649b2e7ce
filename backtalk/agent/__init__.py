"""The Backtalk voice agent: pipeline assembly, service factories, runners, greeting."""

from backtalk.agent.bot import AgentResources as AgentResources
from backtalk.agent.bot import TalkSession as TalkSession
from backtalk.agent.bot import build_conversation as build_conversation
from backtalk.agent.bot import greeting as greeting
from backtalk.agent.bot import run_conversation as run_conversation
from backtalk.agent.pipeline import BotStages as BotStages
from backtalk.agent.pipeline import build_stages as build_stages

__all__ = [
    "AgentResources",
    "BotStages",
    "TalkSession",
    "build_conversation",
    "build_stages",
    "greeting",
    "run_conversation",
]
