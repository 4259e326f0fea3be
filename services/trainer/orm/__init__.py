"""WebRL's outcome reward model (ORM): did a trajectory achieve its instruction?

Where a task has no checker, a learned judge gives the reward. It reads what WebRL's ORM reads
(arXiv 2411.02337, §2): the instruction, the action history, and the final page only, here the
accessibility tree cut to a token budget. Each action names the element it touched
(``click('15')  # button 'Submit'``), because the final page alone often does not show success
(a clicked button leaves the page as it was). The verdict compares the probabilities of the two
answer tokens, YES and NO; their normalised YES probability is kept as a score in [0, 1].

- ``prompt.py``: what the judge reads (``JudgeInput``) and how it is rendered and answered;
- ``scorer.py``: an in-process judge on CPU or GPU, batched;
- ``reward.py``: the ``orm`` reward source of the reward registry.
"""
