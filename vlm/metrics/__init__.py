"""Caption metrics: n-gram scores and grounded scene scores.

`coco`: BLEU, ROUGE-L and CIDEr-D as the official COCO code computes them;
`grounded`: captions parsed back and checked against scene graphs by the
data's dominant-axis rule; `change`: change captions against the change
made; `qa`: answers by question type. Plain Python and NumPy.
"""

from vlm.metrics.change import change_scores
from vlm.metrics.change import moved_breakdown
from vlm.metrics.change import parse_change_caption
from vlm.metrics.coco import bleu
from vlm.metrics.coco import cider_d
from vlm.metrics.coco import rouge_l
from vlm.metrics.coco import score_captions
from vlm.metrics.grounded import grounded_scores
from vlm.metrics.grounded import parse_caption
from vlm.metrics.grounded import relation_breakdown
from vlm.metrics.grounded import relation_holds
from vlm.metrics.qa import answer_scores

__all__ = ["answer_scores", "bleu", "change_scores", "cider_d", "grounded_scores",
           "moved_breakdown", "parse_caption", "parse_change_caption", "relation_breakdown",
           "relation_holds", "rouge_l", "score_captions"]
