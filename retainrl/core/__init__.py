"""What every stage shares and no family or method owns: the params loader and its errors, the
family registry, artifact paths and atomic writes, device resolution, logging and the stage
entry point. Every stage depends on this folder, so keep it small."""
