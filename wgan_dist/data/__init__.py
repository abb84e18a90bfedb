"""The data layer: inputs -> shard sets -> batches.

``sources`` reads user inputs (image folders, CelebA, the ``builtin`` sketches, and through
``quickdraw`` QuickDraw files) into ``records``; ``write`` packs records into shard sets; ``format`` is the shard
set's contract (manifest, reading a tar, decoding a sample) and the only code that knows it;
``shardset`` resolves what the user named into shard URLs; ``pipeline`` reads them as
batches, one stage at a time; ``explore`` looks at a set.
"""
