"""The Streamlit app (`workbench app`): Home.py and pages/ are scripts Streamlit runs from this folder.

A package only so the launcher can find it (``importlib.util.find_spec("app")``) and it ships with the
install; the scripts import their helpers (``data``, ``ui``, ``charts``) as top-level modules, the way
Streamlit runs them.
"""
