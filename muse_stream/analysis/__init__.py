"""Looking back at a topic range: backtests of a candidate model, replays through the real scorer into a
namespace of their own, and the evaluation statistics both report.

May import: errors, config, kafka, models, tenants, scoring.
"""
