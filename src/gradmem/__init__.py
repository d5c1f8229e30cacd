"""gradmem: write a context into a few memory vectors with test-time gradient descent, then answer
queries from the memory alone (GradMem, arXiv 2603.13875)."""

from gradmem.backbones import Backbone, HFBackbone, LlamaBackbone, LlamaConfig, build_backbone
from gradmem.data import Batch, Example, TokenBatch, collate, pad_right
from gradmem.evaluate import evaluate
from gradmem.inner_optim import InnerOptimConfig
from gradmem.memory import Memory, WriteStats
from gradmem.methods import METHODS, GradMemConfig, MemoryMethod, build_method
from gradmem.model import MemoryModel, ReadOutput
from gradmem.run.build import build_model, build_task
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.serve.memory_io import load_memory, save_memory
from gradmem.tasks import TASKS, KVConfig, KVTask
from gradmem.write import WriteConfig, WriteOptions, write

__version__ = "0.1.0"

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
