"""Zero-shot video QA evaluation: MSVD-QA, MSRVTT-QA, ActivityNet-QA and SynthAV.

One reader per benchmark (``msvd_qa.py``, ``msrvtt_qa.py``, ``activitynet_qa.py``,
``synthav_qa.py`` on ``base.py``), offline metrics (``metrics.py``), the Video-ChatGPT GPT-judge
protocol against any OpenAI-compatible endpoint (``judge.py``), the resumable, torchrun-sharded
loop (``runner.py``) and the reports (``report.py``). See docs/evaluation.md.

    from videollama.eval import main_eval
    summary = main_eval("msvd-qa", Path("MSVD-QA"), Path("runs/msvd"), answerer)
"""

from .base import DataError, QAItem, Task, TaskData
from .judge import Judge, JudgeError, JudgeOptions, parse_judgement
from .runner import Answerer, EvalError, add_arguments, main_eval, options_from_args, run_eval, score
from .tasks import TASK_NAMES, TASKS, get_task

__all__ = [
    "Answerer", "DataError", "EvalError", "Judge", "JudgeError", "JudgeOptions", "QAItem", "TASKS", "TASK_NAMES",
    "Task", "TaskData", "add_arguments", "get_task", "main_eval", "options_from_args", "parse_judgement",
    "run_eval", "score",
]
