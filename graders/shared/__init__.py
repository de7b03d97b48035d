"""What several graders share, on the trusted side: never shipped to students, like the graders themselves.

    gpt_training.py   chapters 5, 6 and appendix D: tiny GPTs, token windows, losses, the training run probe
    finetuning.py     chapter 7 (instruction finetuning and DPO): the compact vocabulary, tiny GPTs, datasets
    checkpoints.py    GPT-2 weights (chapter 5), Llama 3.2 and Qwen3: the tiny random checkpoints in data/

A grader never imports another grader; code two graders need lives here once. Generic grading code (probes every
chapter uses, comparisons, mistakes) lives in course/grading/.
"""
