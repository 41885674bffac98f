rule judge_strmatch:
    input:
        questions="results/questions/{promptset}.jsonl",
        answers="results/answers/{promptset}/{condition}.jsonl",
    output:
        judgments="results/judgments/strmatch/{promptset}/{condition}.csv",
    log:
        "logs/judge_strmatch/{promptset}/{condition}.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/judge_strmatch.py"
