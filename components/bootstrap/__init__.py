"""`duplexalign bootstrap`: the embedded base model (see logic.py; corpus in data.py, training in
train.py). Import `components.bootstrap.logic.bootstrap` directly: it pulls in torch and moshi."""
