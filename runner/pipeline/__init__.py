"""The stages after the signal: score and advise per symbol, and a report per cycle.

    base.py      the stage interface: one async method, as analyzers have one
    builtin.py   deterministic, offline score, advice and report (the defaults)
    risk.py      the risk limits, applied in code after the advise stage answers
    prompts.py   what LLM stages are asked and how their answers are checked
    llm.py       a stage answered by an LLM client (openai or opencode)
    factory.py   the stages and the reporter the settings ask for

The chain that runs them, symbol by symbol in the sliding window, is ``runner/analysis.py``.
"""
