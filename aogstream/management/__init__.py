"""Management of a running gateway, one module per thing managed.

The HTTP management routes (`aogstream.http.manage`) are a thin layer over these parts,
so everything here takes plain, already-typed arguments and raises `GatewayError`s with
AOG's business codes (the table is `aogstream.errors`) and a message that names what was
wrong and what exists.

* `shared`: what every part works with (the gateway, its store off the event loop,
  lookups with helpful errors);
* `services`: services, their install, `.aog` export and import;
* `providers`: service providers and their credential check;
* `model_pulls`: model pulls as jobs, and the model rows (list, delete);
* `catalogue`: the models plugins offer (recommend, support);
* `plugins`: plugin processes (list, load, stop, enable, disable, install, delete);
* `plugin_files`: plugin folders on disk, checked before they are installed;
* `archives`: plugin archives unpacked without trusting them.
"""
