"""Print the offline portrait's measures for a finished `sas-portrait` run and write its turntable sheet.

Measures (styleme3d_ns/eval/portrait_measures.py): dlib identity at yaw 35 (found, distance < 0.6), the back view's
mean colour against the photo's hair colour (< 0.10 in RGB [0, 1]), the side views' chroma spread against the face's
own (<= 1.2x), Gaussians on the photo's background (0). The photo's numbers come from the run's data parser (its
offline prior, recomputed from the photo exactly as training did). The portrait demo prints the same lines.

Usage: python scripts/measure_portrait.py --load-config outputs/.../config.yml [--sheet sheet.png] [--json out.json]
"""

from styleme3d_ns.eval.portrait_measures import main

if __name__ == "__main__":
    main()
