#!/usr/bin/env python3
"""Write malicious pickle checkpoints for the pickle guard's tests. Never load the outputs.

Usage: make_hostile.py OUTDIR

  hostile.ckpt               torch zip checkpoint (torch.save, protocol 2): data.pkl holds
                             {"state_dict": {"weight": <float32 tensor [2,2]>, "evil": <os.system call>}};
                             the call is GLOBAL 'os system' + REDUCE with ("echo pwned",).
  hostile_plain.pkl          the same dict as a raw (non-zip) protocol-2 pickle, the tensor as a list.
  hostile_stack_global.pkl   protocol 4, as plain pickle writes os.system on Linux:
                             'posix' 'system' STACK_GLOBAL + REDUCE.

Writing a pickle only calls __reduce__, which returns the (callable, args) pair; nothing is run.
The files are checked afterwards by walking their opcodes with pickletools (no unpickling).
"""
import io
import os
import pickle
import pickletools
import sys
import types
import zipfile

import torch


class Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


class OsSystemPickler(pickle._Pickler):
    """Pure-Python pickler that names os.system as 'os system' (plain pickle writes 'posix system',
    the module os.system really lives in); attackers use both spellings."""

    def save_global(self, obj, name=None):
        if obj is os.system:
            self.write(pickle.GLOBAL + b"os\nsystem\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def globals_in(data):
    """(opcode, module, name) of every GLOBAL / STACK_GLOBAL, found without unpickling."""
    out, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            mod, name = arg.split(" ", 1)
            out.append(("GLOBAL", mod, name))
        elif op.name == "STACK_GLOBAL":
            out.append(("STACK_GLOBAL", strings[-2], strings[-1]))
        if isinstance(arg, str):
            strings.append(arg)
    return out


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    weight = torch.arange(4, dtype=torch.float32).reshape(2, 2)

    ckpt = os.path.join(outdir, "hostile.ckpt")
    torch.save({"state_dict": {"weight": weight, "evil": Evil()}}, ckpt,
               pickle_module=types.SimpleNamespace(__name__="os_system_pickle", Pickler=OsSystemPickler))
    plain = os.path.join(outdir, "hostile_plain.pkl")
    buf = io.BytesIO()
    OsSystemPickler(buf, protocol=2).dump({"state_dict": {"weight": weight.tolist(), "evil": Evil()}})
    with open(plain, "wb") as f:
        f.write(buf.getvalue())
    stack = os.path.join(outdir, "hostile_stack_global.pkl")
    with open(stack, "wb") as f:
        f.write(pickle.dumps({"state_dict": {"weight": weight.tolist(), "evil": Evil()}}, protocol=4))

    with zipfile.ZipFile(ckpt) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        assert len(pkl) == 1, names
        ck_globals = globals_in(z.read(pkl[0]))
    print(f"{ckpt}: zip entries {names}; globals {ck_globals}")
    assert ("GLOBAL", "os", "system") in ck_globals and ("GLOBAL", "torch._utils", "_rebuild_tensor_v2") in ck_globals
    with open(plain, "rb") as f:
        g = globals_in(f.read())
    print(f"{plain}: globals {g}")
    assert g == [("GLOBAL", "os", "system")]
    with open(stack, "rb") as f:
        g = globals_in(f.read())
    print(f"{stack}: globals {g}")
    assert g == [("STACK_GLOBAL", "posix", "system")]


if __name__ == "__main__":
    main()
