"""digitkit: everything digit_classifier.py needs beyond its recipe, one module per job.

    config    every default (Config), the presets, the errors      no heavy imports
    cli       the command line                                      no heavy imports
    data      IDX, .npz or Keras' download; checked, recognised     no heavy imports
    guard     atomic writes, the output-folder lock, memory check   no heavy imports
    backend   Keras started with the chosen backend; the device     imports Keras itself
    metrics   scores from probabilities; mean and spread            no heavy imports
    report    the record (metrics.json), report.html, the summary   no heavy imports
    images    a user's image made to look like MNIST                 Pillow
    draw      --draw's HTTP server (its page: draw.html)            no heavy imports
    augment   the distortion layer and deskewing                    Keras
    networks  committees, the saved model and what it carries       Keras
    training  Ctrl-C, the checkpoint, fit's callbacks                Keras
    trust     calibration and robustness                            Keras
    plots     every picture, the Seaborn heatmap first              Matplotlib, Seaborn
    saved     --evaluate and --predict with a saved model           Keras
    compare   --compare and --repeats                               Keras, Matplotlib

Keras reads its backend once, when first imported: the modules marked Keras are imported
only after backend.start(). Nothing here imports digit_classifier.py, and importing any
module does no work.
"""
