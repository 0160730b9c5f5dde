"""The quickstart's acceptance: clean FP32 accuracy >= 50 %, FGSM 8/255 at least 20 points lower,
transfer rows for dynamic_int8 present. Prints what it checked."""
import sys

import pandas as pd

root = sys.argv[1]
ev = pd.read_parquet(f"{root}/eval")
fp32 = ev[(ev.quant == "fp32") & (ev.attack_source == "self") & (ev.defense == "none")]
clean = fp32[fp32.eps == 0].groupby("trial_id")["accuracy"].first()
attacked = fp32[(fp32.eps - 8 / 255).abs() < 1e-9].groupby("trial_id")["accuracy"].first()
transfer = ev[(ev.quant == "dynamic_int8") & (ev.attack_source == "fp32") & (ev.eps > 0)]
print("clean fp32 accuracy:", clean.round(4).to_dict())
print("fgsm 8/255 accuracy:", attacked.round(4).to_dict())
print("dynamic_int8 transfer rows:", len(transfer))
ok = (clean >= 0.5).all() and ((clean - attacked) >= 0.20).all() and len(transfer) > 0
print("quickstart check:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
