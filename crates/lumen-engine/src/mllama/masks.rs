//! Which text tokens see which image: the cross-attention mask of Llama 3.2
//! Vision, as transformers' `processing_mllama.py` builds it
//! (`get_cross_attention_token_mask`,
//! `convert_sparse_cross_attention_mask_to_dense`).
//!
//! Each `<|image|>` token opens a span that runs up to the next image token
//! (or to the end); consecutive image tokens all run to the end of the text
//! that follows them. Tokens before the first image see no image.

/// The span `[start, end)` of token rows attending to each image, in order.
pub fn image_spans(ids: &[u32], image_token: u32) -> Vec<(usize, usize)> {
    let locations: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == image_token)
        .map(|(i, _)| i)
        .collect();
    let mut spans: Vec<(usize, usize)> = locations
        .iter()
        .enumerate()
        .map(|(i, &start)| (start, locations.get(i + 1).copied().unwrap_or(ids.len())))
        .collect();
    // Walking back, an image token directly followed by another image token
    // takes the span end of the one after it.
    let mut last_end = ids.len();
    for span in spans.iter_mut().rev() {
        if span.0 + 1 == span.1 {
            span.1 = last_end;
        }
        last_end = span.1;
    }
    spans
}

/// The dense mask `(rows, images, max_tiles)` (1 = attend), for `rows` token
/// positions, given each image's span and number of tiles.
pub fn dense_mask(
    spans: &[(usize, usize)],
    num_tiles: &[usize],
    max_tiles: usize,
    rows: usize,
) -> Vec<u8> {
    let images = spans.len();
    let mut mask = vec![0u8; rows * images * max_tiles];
    for (img, (&(start, end), &tiles)) in spans.iter().zip(num_tiles).enumerate() {
        for row in start..end.min(rows) {
            let at = (row * images + img) * max_tiles;
            mask[at..at + tiles.min(max_tiles)].fill(1);
        }
    }
    mask
}

/// Per row: whether it attends to any image (transformers'
/// `full_text_row_masked_out_mask`, as 1/0).
pub fn rows_with_images(mask: &[u8], rows: usize) -> Vec<bool> {
    if rows == 0 {
        return Vec::new();
    }
    let width = mask.len() / rows;
    (0..rows)
        .map(|r| mask[r * width..(r + 1) * width].iter().any(|m| *m != 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_transformers_rules() {
        assert_eq!(image_spans(&[1, 2, 3], 9), vec![]);
        assert_eq!(image_spans(&[1, 9, 2, 3, 9, 4, 5], 9), vec![(1, 4), (4, 7)]);
        assert_eq!(image_spans(&[1, 9, 9, 2, 3], 9), vec![(1, 5), (2, 5)]);
        assert_eq!(
            image_spans(&[9, 1, 9, 9, 2, 9, 3], 9),
            vec![(0, 2), (2, 5), (3, 5), (5, 7)]
        );
    }
}
