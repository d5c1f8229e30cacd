"""gradmem: write a context into a few memory vectors with test-time gradient descent, then answer
queries from the memory alone (GradMem, arXiv 2603.13875)."""

from gradmem.backbones import Backbone, HFBackbone, LlamaBackbone, LlamaConfig, build_backbone
from gradmem.core.batch import Batch, Example, TokenBatch, collate, pad_right
from gradmem.core.inner_optim import InnerOptimConfig
from gradmem.core.memory import Memory, WriteStats
from gradmem.core.memory_file import load_memory, save_memory
from gradmem.core.version import VERSION
from gradmem.core.write import WriteConfig, WriteOptions, write
from gradmem.evaluation.evaluate import evaluate
from gradmem.methods import METHODS, GradMemConfig, MemoryMethod, build_method
from gradmem.methods.model import MemoryModel, ReadOutput
from gradmem.run.build import build_model, build_task
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.tasks import TASKS, KVConfig, KVTask

__version__ = VERSION

__all__ = [
    "Backbone",
    "HFBackbone",
    "LlamaBackbone",
    "LlamaConfig",
    "build_backbone",
    "build_model",
    "build_task",
    "load_checkpoint",
    "save_checkpoint",
    "Batch",
    "Example",
    "TokenBatch",
    "collate",
    "pad_right",
    "evaluate",
    "InnerOptimConfig",
    "Memory",
    "WriteStats",
    "load_memory",
    "save_memory",
    "METHODS",
    "GradMemConfig",
    "MemoryMethod",
    "build_method",
    "MemoryModel",
    "ReadOutput",
    "TASKS",
    "KVConfig",
    "KVTask",
    "WriteConfig",
    "WriteOptions",
    "write",
]
