"""Experience replay for any LightningModule: buffers, ER (a callback) and MER (a wrapper).

A buffer is composed of a storage, a writer and a sampler, one to a module (``storage``, ``writer`` (reservoir),
``uniform`` and ``prioritized`` (samplers), ``sumtree``, ``protocols``); ``pooling`` re-shards saved buffers and
``ranks`` keeps one buffer per DDP process. ``ExperienceReplay(buffer)`` mixes a buffer's samples into your batches;
``MER`` wraps your module. Task sequences and the accuracy matrix are in ``lightning_per.continual``.

Example::

    from lightning.pytorch import Trainer
    from lightning_per.continual import TaskSequence
    from lightning_per.replay import ExperienceReplay, PrioritizedReplayBuffer

    replay = ExperienceReplay(PrioritizedReplayBuffer(capacity=200, alpha=0.6), replay_batch_size=10)
    Trainer(max_epochs=1, callbacks=[replay]).fit(MyModule(), datamodule=TaskSequence(tasks=[task0, task1]))
"""

from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer, ReplaySample, ReservoirBuffer
from lightning_per.replay.experience import ExperienceReplay
from lightning_per.replay.mer import MER

__all__ = ["MER", "ExperienceReplay", "PrioritizedReplayBuffer", "ReplayBuffer", "ReplaySample", "ReservoirBuffer"]
