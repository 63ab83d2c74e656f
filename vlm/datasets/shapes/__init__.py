"""The shapes world: scenes of coloured shapes, three languages about them, and their datasets.

    vocabulary.py  the words of every shapes language (plain Python: the metrics read them)
    scene.py       scene graphs of 1-3 objects, placed and rendered once for all datasets
    captions.py    relational captions of a scene, and the caption examples
    changes.py     one change between two scenes, its captions and canonical form
    questions.py   six questions about a scene with their answers, and their prompts
    builders.py    the three TFDS builders on one pattern, and their loaders
    scorers.py     how a model is scored on each: scene graphs, changes, answers

Every number comes from `np.random.default_rng([seed, index])` (questions:
`[seed, index, 1]`), so an example is regenerated alone and a seed gives the
same bytes. This package imports nothing heavy: `vlm.metrics` reads its
vocabulary without TensorFlow.
"""
