"""aruntime: durable execution for asyncio, the event-sourcing way.

A run is a workflow made of steps; every fact about it is appended to its log before the
runtime moves on, and its state is a fold of that log, so a crashed run resumes exactly
where its log ends.
"""

from aruntime._context import RunContext as RunContext
from aruntime._context import StepContext as StepContext
from aruntime._context import current_run as current_run
from aruntime._context import current_step as current_step
from aruntime._definitions import Step as Step
from aruntime._definitions import Workflow as Workflow
from aruntime._definitions import registered_workflows as registered_workflows
from aruntime._definitions import sequence as sequence
from aruntime._definitions import step as step
from aruntime._definitions import workflow as workflow
from aruntime._ops import TaskGroup as TaskGroup
from aruntime._ops import gather as gather
from aruntime._ops import sleep as sleep
from aruntime._ops import sleep_until as sleep_until
from aruntime._ops_vocab import first as first
from aruntime._ops_vocab import publish as publish
from aruntime._ops_vocab import receive as receive
from aruntime._ops_vocab import run_child as run_child
from aruntime._ops_vocab import send as send
from aruntime._ops_vocab import start_child as start_child
from aruntime._supervisor import RestartBudget as RestartBudget
from aruntime.client import Client as Client
from aruntime.client import ClientHandle as ClientHandle
from aruntime.clock import Clock as Clock
from aruntime.clock import SystemClock as SystemClock
from aruntime.errors import AruntimeError as AruntimeError
from aruntime.errors import ConcurrencyError as ConcurrencyError
from aruntime.errors import ConfigError as ConfigError
from aruntime.errors import CorruptLogError as CorruptLogError
from aruntime.errors import InvalidRunIdError as InvalidRunIdError
from aruntime.errors import NonDeterminismError as NonDeterminismError
from aruntime.errors import NonRetryableError as NonRetryableError
from aruntime.errors import RetryAfter as RetryAfter
from aruntime.errors import RunActiveError as RunActiveError
from aruntime.errors import RunCancelledError as RunCancelledError
from aruntime.errors import RunEndedError as RunEndedError
from aruntime.errors import RunFailedError as RunFailedError
from aruntime.errors import RunIdConflictError as RunIdConflictError
from aruntime.errors import RunNotFoundError as RunNotFoundError
from aruntime.errors import RunParkedError as RunParkedError
from aruntime.errors import SerializationError as SerializationError
from aruntime.errors import StepFailedError as StepFailedError
from aruntime.errors import StepTimeout as StepTimeout
from aruntime.errors import StoreError as StoreError
from aruntime.errors import UnknownWorkflowError as UnknownWorkflowError
from aruntime.errors import UntrackedTaskError as UntrackedTaskError
from aruntime.queues import Queue as Queue
from aruntime.queues import Rate as Rate
from aruntime.retry import RetryPolicy as RetryPolicy
from aruntime.runtime import RunHandle as RunHandle
from aruntime.runtime import Runtime as Runtime
from aruntime.runtime import RuntimeConfig as RuntimeConfig
from aruntime.serializer import JsonSerializer as JsonSerializer
from aruntime.serializer import Serializer as Serializer
from aruntime.state import RunState as RunState
from aruntime.state import RunStatus as RunStatus
from aruntime.state import SleepState as SleepState
from aruntime.state import StepState as StepState
from aruntime.state import StepStatus as StepStatus
from aruntime.state import replay as replay
from aruntime.store import EventStore as EventStore
from aruntime.store import MemoryStore as MemoryStore
from aruntime.store import RunInfo as RunInfo
from aruntime.store import open_store as open_store

__all__ = [
    "AruntimeError",
    "Client",
    "ClientHandle",
    "Clock",
    "ConcurrencyError",
    "ConfigError",
    "CorruptLogError",
    "EventStore",
    "InvalidRunIdError",
    "JsonSerializer",
    "MemoryStore",
    "NonDeterminismError",
    "NonRetryableError",
    "Queue",
    "Rate",
    "RestartBudget",
    "RetryAfter",
    "RetryPolicy",
    "RunActiveError",
    "RunCancelledError",
    "RunContext",
    "RunEndedError",
    "RunFailedError",
    "RunHandle",
    "RunIdConflictError",
    "RunInfo",
    "RunNotFoundError",
    "RunParkedError",
    "RunState",
    "RunStatus",
    "Runtime",
    "RuntimeConfig",
    "SerializationError",
    "Serializer",
    "SleepState",
    "Step",
    "StepContext",
    "StepFailedError",
    "StepState",
    "StepStatus",
    "StepTimeout",
    "StoreError",
    "SystemClock",
    "TaskGroup",
    "UnknownWorkflowError",
    "UntrackedTaskError",
    "Workflow",
    "current_run",
    "current_step",
    "first",
    "gather",
    "open_store",
    "publish",
    "receive",
    "registered_workflows",
    "replay",
    "run_child",
    "send",
    "sequence",
    "sleep",
    "sleep_until",
    "start_child",
    "step",
    "workflow",
]
