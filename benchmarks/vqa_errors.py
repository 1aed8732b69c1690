"""The wrong answers of trained VQA runs on a dataset's test split: how many, by reference answer,
the commonest (reference, answer) confusions and, with ``--questions N``, the N questions most
often answered wrong. Top-1 answer against the first reference answer (easy-VQA and the shapes
set have one answer per question).

    python benchmarks/vqa_errors.py runs/easyvqa-frozen-pt-s0 runs/easyvqa-full-pt-s0 --data easyvqa
    python benchmarks/vqa_errors.py runs/easyvqa-frozen-pt-s0 --questions 10
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories of `mmcli finetune --task vqa`")
    ap.add_argument("--data", default="easyvqa", help="dataset spec (default: easyvqa)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=512, help="questions per call")
    ap.add_argument("--questions", type=int, default=0, metavar="N",
                    help="also list the N questions most often answered wrong, with their reference answers")
    a = ap.parse_args()
    import mmcli
    from mmcli.data.spec import load_dataset

    questions = load_dataset(a.data).splits[a.split].questions
    for run in a.runs:
        model = mmcli.load(run)
        total, wrong, confusions, asked = Counter(), Counter(), Counter(), Counter()
        for i in range(0, len(questions), a.batch):
            chunk = questions[i:i + a.batch]
            answers = model.answer_batch([q.image for q in chunk], [q.question for q in chunk], top_k=1)
            for q, top in zip(chunk, answers):
                gold, pred = q.answers[0], top[0][0]
                total[gold] += 1
                if pred != gold:
                    wrong[gold] += 1
                    confusions[gold, pred] += 1
                    asked[q.question, gold] += 1
        print(f"{run}: {sum(wrong.values())} wrong of {len(questions)} ({a.data} {a.split})")
        print("  wrong by reference answer: " + (", ".join(f"{g} {n} of {total[g]}" for g, n in wrong.most_common()) or "none"))
        print("  commonest confusions (reference -> answer): "
              + (", ".join(f"{g} -> {p} {n}" for (g, p), n in confusions.most_common(6)) or "none"))
        if a.questions:
            print("  questions most often wrong (reference answer): "
                  + (", ".join(f'"{q}" ({g}) {n}' for (q, g), n in asked.most_common(a.questions)) or "none"))


if __name__ == "__main__":
    main()
