"""``socklab learn``: the lessons walked through - scenes, traces, predictions and exercises."""
