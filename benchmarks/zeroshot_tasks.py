# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Writes lm-eval task YAMLs for local zero-shot files, for offline machines.

    python benchmarks/zeroshot_tasks.py --winogrande PATH.jsonl --sciq PATH.jsonl --output DIR

``winogrande_local``: WinoGrande twin sentences (fields sentence, option1, option2, answer "1"/"2"),
scored like lm-eval's ``winogrande`` (partial scoring: the option fills the blank, the model
scores the rest of the sentence). ``sciq4_local``: four-choice questions (fields question,
choices, label). Pass DIR to ``--dmx-eval-include`` and run with HF_DATASETS_OFFLINE=1.
"""

import argparse
import os

WINOGRANDE = """task: winogrande_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ (answer | int) - 1 }}}}"
doc_to_choice: "{{{{ [sentence.split('_')[0] ~ option1, sentence.split('_')[0] ~ option2] }}}}"
doc_to_target: "{{{{ sentence.split('_', 1)[1].strip() }}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

SCIQ = """task: sciq4_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--winogrande", help="WinoGrande-schema JSON lines file")
    parser.add_argument("--sciq", help="four-choice question JSON lines file")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    for path, template, name in ((args.winogrande, WINOGRANDE, "winogrande_local"),
                                 (args.sciq, SCIQ, "sciq4_local")):
        if path is None:
            continue
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
        with open(os.path.join(args.output, f"{name}.yaml"), "w") as f:
            f.write(template.format(path=os.path.abspath(path)))
        print(f"wrote {os.path.join(args.output, name + '.yaml')}")


if __name__ == "__main__":
    main()
